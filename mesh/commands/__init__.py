"""Click command groups of `mesh`, one module each, plus the options they share."""
