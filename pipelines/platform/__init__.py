"""Running citylake as a platform: the init steps of a deployment, worker naming, sample source servers."""
