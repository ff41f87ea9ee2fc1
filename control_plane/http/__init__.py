"""Floor 4, HTTP: the Starlette API, its middleware and OpenAPI document, the dashboard and its charts."""
