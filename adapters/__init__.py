"""Provider adapters: turn a verified query into a dataset document by calling a provider over HTTP."""
