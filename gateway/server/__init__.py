"""Serving: listeners, the server implementations (uvicorn with HTTP/2, hypercorn), workers."""
