"""Data: text sources for evaluation and calibration; loading, cleaning and augmenting datasets."""

from lmopt.data.text import TEXT_SOURCES, file_text, load_text, pydoc_text, wikitext2_text

__all__ = ["TEXT_SOURCES", "file_text", "load_text", "pydoc_text", "wikitext2_text"]
from lmopt.data.load import BadRows, Record, RecordStream, open_records, read_records  # noqa: E402

__all__ += ["BadRows", "Record", "RecordStream", "open_records", "read_records"]
