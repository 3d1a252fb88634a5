"""``python -m s3queue`` runs the command line."""

from s3queue.cli import main

main()
