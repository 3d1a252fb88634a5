"""The task app: ``@app.task``, job handles, chains and groups (see :mod:`.app`)."""
