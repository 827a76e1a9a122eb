from molgiae.cli import main

main()
