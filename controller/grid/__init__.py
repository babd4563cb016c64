"""The site as a flexible load for the grid: demand-response instructions and
how a grid operator settles them."""
