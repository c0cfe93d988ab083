"""The sending engine: claim a chunk, choose providers, send over pooled SMTP sessions, record.

Everything here is used by the engine alone (or read by ops views); the API reaches it only
through the tasks and the publisher.
"""
