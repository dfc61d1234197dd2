"""Streaming sentence chunker: text in (any piece size), speakable ``Segment``s out.

Standard library only. See ``chunker.chunker.SentenceChunker`` for the rules.
"""

from chunker.chunker import SentenceChunker
from chunker.config import ChunkerConfig, Segment

__all__ = ["ChunkerConfig", "Segment", "SentenceChunker"]
