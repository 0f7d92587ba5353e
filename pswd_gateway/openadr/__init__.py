"""OpenADR virtual end nodes: the utility's demand-response events in, the site's load out."""
