"""End-to-end tests: the bot as people meet it.

The unmodified discord.py client against the Discord protocol peer (``tests/harness``), the LLM through
the Ollama protocol peer, and the bot as a separate process where a test kills it. The tests in
``tests/`` above this folder check one component at a time (store, queue, decoder, reader, CLI, ...).
"""
