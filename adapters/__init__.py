"""Platform adapters: each turns platform events into ``Incoming`` and posts replies back."""
