"""The sweep report: a multirun's results, the recommended beta with its uncertainty, the plots."""
