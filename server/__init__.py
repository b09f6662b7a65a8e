"""The tandem search service: student queries against a teacher-built index bundle."""
