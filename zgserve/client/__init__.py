"""The user side: ledger operations, request tokens, OpenAI-compatible calls, verification."""
