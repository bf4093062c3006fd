"""Synthetic "shapes" videos: a captioned dataset in SAT's layout, and reading a video's content back from pixels."""
