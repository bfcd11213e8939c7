from tpdeploy.cli import main

main()
