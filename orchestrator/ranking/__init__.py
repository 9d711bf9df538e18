"""The built-in ranking model: training on purchases, scoring, offline evaluation."""
