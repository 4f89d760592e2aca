"""HTTP endpoints: thin adapters from a wire format to the pipeline."""
