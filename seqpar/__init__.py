"""seqpar: can a recurrent net be trained in parallel over time, and what does it cost?"""

__version__ = "0.1.0"
