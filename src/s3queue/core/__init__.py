"""The queue's core: on-disk formats, their pure transitions and the loops that
read and write them (below the public Queue; nothing here imports it)."""
