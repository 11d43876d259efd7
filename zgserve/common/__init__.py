"""Pieces shared by every component: errors, money, SSE, signing, networking helpers."""
