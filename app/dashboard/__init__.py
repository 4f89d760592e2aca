"""The built-in web dashboard at ``/dashboard``: spend, budgets and savings from the ledger."""
