"""The JobManager: accepts jobs from clients holding its token and runs them on Ray."""
