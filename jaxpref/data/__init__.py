"""Reading data: arena CSVs, preference files, text shaping, splits, probability files."""
