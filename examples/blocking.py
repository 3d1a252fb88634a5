"""The blocking client, for producers that are not async (Django, Flask, scripts).

python examples/blocking.py
"""

import s3queue

with s3queue.connect("file://.s3queue-example", "emails") as q:  # or "s3://bucket/prefix"
    mid = q.enqueue({"to": "ada@example.com"})
    info = q.get(mid)
    print(mid, info.status if info else "unknown")  # pending until a worker takes it
