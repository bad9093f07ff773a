"""Deploy targets: compose, k8s, aws, gcp (see cli.py)."""
