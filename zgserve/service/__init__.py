"""The verifiable service: an OpenAI-compatible proxy whose every answer is signed by a TEE-born key."""
