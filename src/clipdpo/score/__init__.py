"""score: open_clip image-text scores, image categories, question and check-caption scores."""
