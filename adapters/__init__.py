"""Event sources: files, synthetic scenes, network streams and cameras, as EventBatches."""

from augury.adapters.base import ArraySource, Chunk, EventSource, open_source, parse_uri

__all__ = ["ArraySource", "Chunk", "EventSource", "open_source", "parse_uri"]
