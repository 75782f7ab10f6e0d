"""HTTP and WebSocket routes, grouped by resource; each parses, calls once, renders."""
