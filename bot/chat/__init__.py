"""Conversation with the LLM: prompt building, the Ollama client, reply splitting, fallbacks."""
