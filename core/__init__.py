"""The ground floor: what every layer of regscan may import.

Settings, secrets, the Redis key list, the fair queue's contract, the task names with
the one publisher, the image reference and requester values, and the job view that the
API and callbacks both render. Nothing here imports anything of the project above it.
"""
