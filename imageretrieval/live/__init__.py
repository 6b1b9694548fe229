"""The live catalog: products added, updated and deleted while the service runs, journaled durably."""
