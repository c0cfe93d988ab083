"""The operator dashboard: what it shows (data.py) and its page (templates/dashboard.html)."""
