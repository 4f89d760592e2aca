// The Vercel AI SDK's default OpenAI provider (Responses API) against Tollway: generateText, streamText,
// a tool loop (the SDK sends the function_call_output turn itself) and structured output.
// Prints one JSON object; tests/e2e/test_js_clients.py asserts on it.
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText, tool, stepCountIs, Output } from "ai";
import { z } from "zod";

const openai = createOpenAI({ baseURL: process.env.TOLLWAY_BASE_URL, apiKey: process.env.TOLLWAY_API_KEY });
const model = openai(process.env.TOLLWAY_MODEL);
const out = {};

const generated = await generateText({ model, system: "Answer briefly", prompt: "Hello there" });
out.generate = { text: generated.text, finishReason: generated.finishReason, usage: generated.usage };

const streamed = streamText({ model, prompt: "Stream please" });
const parts = [];
for await (const part of streamed.textStream) parts.push(part);
out.stream = { parts: parts.length, text: parts.join(""), finishReason: await streamed.finishReason };

const withTools = await generateText({
  model,
  prompt: "What's the weather in Paris?",
  tools: {
    get_weather: tool({
      description: "Current weather for a city",
      inputSchema: z.object({ city: z.string(), unit: z.enum(["celsius", "fahrenheit"]) }),
      execute: async ({ city }) => `18 degrees and sunny in ${city}`,
    }),
  },
  stopWhen: stepCountIs(3),
});
out.tools = {
  steps: withTools.steps.map((s) => ({
    finishReason: s.finishReason,
    toolCalls: s.toolCalls.map((c) => ({ name: c.toolName, input: c.input })),
    toolResults: s.toolResults.map((r) => r.output),
    text: s.text,
  })),
};

const structured = await generateText({
  model,
  prompt: "A person",
  output: Output.object({ schema: z.object({ name: z.string(), age: z.number().int() }) }),
});
out.object = structured.output;

console.log(JSON.stringify(out));
