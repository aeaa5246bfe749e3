"""What the pages share: Streamlit code that is not a page (the frame and sidebar, the job panel, widgets and render
helpers). A page lives in pages/ and is listed in app.py; anything two pages use, or a page's section grown long, is
here. core/ never imports this package."""
