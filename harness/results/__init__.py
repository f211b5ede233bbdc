"""What a sweep writes and how it is read back: the results contract (tables, columns,
file names), the typed trial report, a trial's spec, and the selection of best trials."""
