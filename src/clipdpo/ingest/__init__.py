"""ingest: image files (folder, S3 prefix or the built-in demo set) into an images artifact."""
