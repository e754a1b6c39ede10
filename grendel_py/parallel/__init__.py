"""Distributed execution: the runtime context and (coming) the exchange of splats between ranks."""
