from sluice.broker.cli import main

main()
