"""Apache Beam pipelines of relay (DirectRunner by default; any Beam runner via pipeline options)."""
