"""The fault-injection suite (issue 14): every row of docs/reliability.md has its test here."""
