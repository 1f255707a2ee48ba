"""Developer tools: run a command inside User-Mode Linux (umlrun), the demo."""
