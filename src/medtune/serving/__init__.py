"""Serving, split by concern: engine (model + queue + worker), schemas (request and error shapes), app (routes),
server (socket and uvicorn), static/ (the web page)."""
