// VireoCLI
