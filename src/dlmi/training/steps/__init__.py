"""What one batch does for each task: its losses and per-batch records; the classifier gate of aided runs."""
