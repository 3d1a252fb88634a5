"""A task app, as Celery users write one. Run a worker for it from the checkout:

    s3queue worker -A examples.tasks:app

and call its tasks from any process (``python examples/tasks.py`` calls them, then
runs a worker in burst mode itself, so that it works alone too).
"""

from __future__ import annotations

import s3queue

app = s3queue.App()  # $S3QUEUE_URL, else file://.s3queue


@app.task(queue="emails", max_attempts=5)
def send_email(to: str, subject: str = "") -> dict[str, str]:
    return {"sent_to": to, "subject": subject}


@app.task
async def resize(path: str, width: int = 100) -> str:
    return f"{path.removesuffix('.png')}-{width}.png"


@app.task
def caption(path: str, text: str) -> str:
    return f"{path}: {text}"


def main() -> None:
    job = send_email.delay("ada@example.com", subject="hi")
    later = send_email.apply(args=("bob@example.com",), delay=0.5)
    flow = s3queue.chain(resize.s("cat.png"), caption.s("a cat")).delay()
    batch = s3queue.group(resize.s(p, width=64) for p in ["a.png", "b.png"]).delay()
    app.run_worker(burst=True)  # or, in another shell: s3queue worker -A examples.tasks:app
    print(job.id, job.status(), job.result(timeout=10))
    print(later.result(timeout=10))
    print(flow.result(timeout=10))
    print(batch.result(timeout=10))
    app.close()


if __name__ == "__main__":
    main()
