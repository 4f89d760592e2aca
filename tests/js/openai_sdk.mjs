// The OpenAI JS SDK's responses.create (plain and streaming) against Tollway. Prints one JSON object.
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.TOLLWAY_BASE_URL, apiKey: process.env.TOLLWAY_API_KEY, maxRetries: 0 });
const model = process.env.TOLLWAY_MODEL;
const out = {};

const created = await client.responses.create({ model, input: "Hello there", instructions: "Answer briefly" });
out.create = { id: created.id, status: created.status, text: created.output_text, usage: created.usage };

const stream = await client.responses.create({ model, input: "Stream please", stream: true });
const types = [];
let deltas = "";
let completed = null;
for await (const event of stream) {
  types.push(event.type);
  if (event.type === "response.output_text.delta") deltas += event.delta;
  if (event.type === "response.completed") completed = event.response;
}
out.stream = { types, deltas, completedText: completed?.output?.[0]?.content?.[0]?.text, usage: completed?.usage };

try {
  await client.responses.create({ model, input: "Hi", previous_response_id: "resp_1" });
  out.refused = null;
} catch (err) {
  out.refused = { status: err.status, message: err.message };
}

console.log(JSON.stringify(out));
