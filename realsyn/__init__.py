"""realsyn: a Spark + Delta Lake pipeline that builds RealSyn-style image-text data from interleaved documents."""

__version__ = "0.1.0"
