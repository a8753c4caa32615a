"""The OpenAI-compatible HTTP server (`omnivision serve`): request parsing and limits, image intake,
the generation slots, the FastAPI app and its try-it page. FastAPI and uvicorn are the `serve` extra.
"""
