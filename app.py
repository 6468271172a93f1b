import streamlit as st
st.title("rtn")
