"""One router per topic: health, models, images, sessions (and their predictions), jobs."""
